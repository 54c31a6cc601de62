"""From a timm model to an adaptive one: trace it, find its residual stages, plan, apply the plan.

``tracing`` (torch.fx, seeded with timm's notrace registry) -> ``residuals`` (is a graph region
residual?) -> ``blocks`` (block lists, one forward pass for shapes, the residual blocks) -> ``stages``
(runs of same-shape blocks -> stages with mandatory and skippable blocks and skip-aware norms;
``norms`` says which layers normalise) -> ``analysis`` (``analyse()``: the
:class:`~adnify.conversion.plan.Plan`) -> ``convert`` (creates or takes the model, loads weights,
applies the plan as an :class:`~adnify.AdaptiveNet`).
"""
