"""KFP pipelines built from the components; each ``<name>.py`` has its compiled ``<name>.yaml`` beside it.

``sslcore pipelines compile`` rewrites the YAML, ``sslcore pipelines run NAME`` runs a pipeline
locally through kfp.local (see :mod:`pipelines.runner`).
"""
