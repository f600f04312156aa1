"""A Hydra sweep of same-shaped nets trained as one stacked model (``hydra/launcher=population``).

``stacked`` holds the members' networks as one module, ``optim`` and ``norms`` their RMSprop and its
monitor on stacked tensors, ``coefficients`` the members' RMSprop options as tensors, ``module`` and
``data`` the Lightning side, ``members`` which jobs train together, ``train`` the fit, ``outputs`` and
``checkpoints`` each job's folder, ``forks`` the workers that compose the jobs' configs and write their
folders, ``launcher`` the Hydra launcher and ``hydra_plugin`` Hydra's entry to it.
"""
