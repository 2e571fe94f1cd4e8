"""The HTML report: self-contained, every section present, escaped, and it renders in a real browser."""

import html.parser
import re
import shutil
import subprocess

import numpy as np
import pytest

import armor
from armor.app.claims import claims
from armor.app.measure import add_cost, measure
from armor.app.report import render_report
from armor.app.results import stamp


@pytest.fixture(scope="module")
def results(digits_model, digits):
    _, _, x, y = digits
    threat = armor.ThreatModel("linf", 0.1)
    models, arts = {}, {}
    fast = {"apgd-ce": {"steps": 10}, "apgd-t": {"steps": 5, "n_target_classes": 2}, "square": {"n_queries": 100}}
    for name, recipe, secs in (("standard", "standard", 1.0), ("<b>hardened</b>", "pgd-at", 9.0)):
        entry, art = measure(digits_model, (x[:150], y[:150]), threat, attack_kwargs=fast, masking_n=60,
                             eps_grid=[0, 0.05, 0.1])
        entry.update(recipe=recipe, train_seconds=secs, passes={"forward": 10, "backward": 10},
                     equipment={"per_device": {"0": 0.9, "1": 0.7}, "in_device_accuracy": 0.9,
                                "out_of_device_accuracy": 0.7})
        models[name], arts[name] = entry, art
    models["standard"]["masking_flags"] = [{"name": "zero_gradients", "message": "most gradients are zero"}]
    add_cost(models)
    return stamp({"dataset": "digits", "models": models, "claims": claims(models, "standard", "<b>hardened</b>")}), arts


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.srcs, self.hrefs = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if "src" in a:
            self.srcs.append(a["src"])
        if "href" in a:
            self.hrefs.append(a["href"])


def test_report_has_every_section_and_no_external_url(results):
    res, arts = results
    page = render_report(res, arts)
    p = _Collect()
    p.feed(page)
    assert {"summary", "claims", "robustness", "curves", "calibration", "shift", "interpretability", "cost",
            "masking"} <= p.ids
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert all(h.startswith("#") for h in p.hrefs)
    assert not re.search(r"(src|href)=\"https?://", page)
    # figures are real PNGs
    import base64
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for s in p.srcs)
    # the numbers shown are the measured ones
    std = res["models"]["standard"]
    assert f"{std['robust_accuracy']:.1%}" in page and f"{std['clean_accuracy']:.1%}" in page
    assert "zero_gradients" in page and "most gradients are zero" in page
    assert "gradient–image alignment" in page


def test_report_escapes_names(results):
    res, arts = results
    page = render_report(res, arts)
    assert "<b>hardened</b>" not in page and "&lt;b&gt;hardened&lt;/b&gt;" in page


def test_report_needs_a_model():
    with pytest.raises(ValueError, match="no model"):
        render_report({"models": {}})


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package `chromium`; `make test` installs it as root)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    res, arts = results
    page = tmp_path / "report.html"
    page.write_text(render_report(res, arts))
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    page.as_uri()], check=True, timeout=120, capture_output=True)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 3000 and img.shape[1] >= 1200
    rgb = img[..., :3]
    # not blank: many distinct colours, and a good share of non-background pixels
    assert len(np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 200
    assert (np.abs(rgb - rgb[5, 5]).sum(-1) > 0.1).mean() > 0.2
