"""From a timm model to an adaptive one: trace it, find its residual stages, plan, apply the plan.

``tracing`` (torch.fx, seeded with timm's notrace registry) -> ``residuals`` (residual blocks and
stages) -> ``analysis`` (the :class:`~adnify.conversion.plan.Plan`: mandatory and skippable blocks,
skip-aware norms; ``norms`` says which layers normalise) -> ``convert`` (creates or takes the
model, loads weights, applies the plan as an :class:`~adnify.AdaptiveNet`).
"""
