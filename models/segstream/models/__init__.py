"""FCN-ResNet segmentation models: catalog, download, synthetic builds and graph utilities.

The modules are imported on demand (``segstream.models.graph``, ``.fetch``...) so that using
one of them does not pull in the others' dependencies.
"""
