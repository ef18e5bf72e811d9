"""rramc's built-in compiler passes, one per module (installed as ``rramc.passes``).

Look passes up by name through :data:`rramc.pipeline.PASSES`, which also finds third-party
passes registered under the ``rramc.passes`` entry-point group.
"""
