"""Measurements beyond robust accuracy: curves, calibration, distribution shift, interpretability, masking.

Every function returns plain JSON-ready dicts (tensors only where a plot needs images), ready to drop into
results.json:

    >>> from armor import metrics
    >>> entry["curve"] = metrics.robustness_curve(model, x, y, threat)
    >>> entry["calibration"] = metrics.calibration_report(model, x, y, threat)
    >>> entry["shift"] = metrics.shift_accuracy(model, x, y)
    >>> entry["equipment"] = metrics.equipment_shift(train_fn, x_test, y_test, x_train=x_tr, y_train=y_tr)
    >>> checks = metrics.masking_checks(model, x, y, threat)
    >>> entry["masking_flags"], entry["masking_checks"] = checks["flags"], checks["checks"]
"""

from __future__ import annotations

from .calibration import (CalibrationMeter, brier_score, calibration_metrics, calibration_report,
                          expected_calibration_error, negative_log_likelihood, reliability_diagram)
from .curves import check_eps_grid, default_eps_grid, robustness_curve
from .interpret import (adversarial_gallery, alignment_scores, gradient_alignment, interpretability_artifacts,
                        saliency)
from .masking import CHECKS as MASKING_CHECKS
from .masking import REGISTRY as MASKING_REGISTRY
from .masking import large_eps_for, masking_checks
from .shift import (CORRUPTIONS, DEVICE_RANGES, SEVERITIES, DeviceProfile, apply_device, corrupt, device_profiles,
                    device_views, equipment_shift, gaussian_blur, shift_accuracy)

__all__ = [
    "CORRUPTIONS", "CalibrationMeter", "DEVICE_RANGES", "DeviceProfile", "MASKING_CHECKS", "MASKING_REGISTRY",
    "SEVERITIES", "adversarial_gallery", "alignment_scores", "apply_device", "brier_score", "calibration_metrics",
    "calibration_report", "check_eps_grid", "corrupt", "default_eps_grid", "device_profiles", "device_views",
    "equipment_shift", "expected_calibration_error", "gaussian_blur", "gradient_alignment",
    "interpretability_artifacts", "large_eps_for", "masking_checks", "negative_log_likelihood",
    "reliability_diagram", "robustness_curve", "saliency", "shift_accuracy",
]
