"""Access review: what a change to the map or the policy does, and what a policy
grants to no purpose.

Above the pure core (it evaluates with :mod:`permgate.core.decision` and
:mod:`permgate.core.permissions`, never a copy of their rules) and below the command line:
:mod:`permgate.review.world` snapshots a model from the store or a policy file,
:mod:`permgate.review.diff` computes the exact access impact of a change,
:mod:`permgate.review.render` prints it, :mod:`permgate.review.lint` judges roles.
"""
