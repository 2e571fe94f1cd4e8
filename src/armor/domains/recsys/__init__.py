"""The recsys domain: adversarial perturbation of recommender embeddings and APR training (work in progress)."""

from ...plugins import Domain

DOMAIN = Domain(name="recsys", description="recommenders under embedding perturbations")
