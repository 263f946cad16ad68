"""File-format backends: one module per library (nibabel, pynrrd, SimpleITK, Pillow, NumPy ``.npz``).

Each backend module exposes ``read(path, label) -> (array (C, *S), meta)``, ``read_header(path) -> meta``
and, where the format can store results, ``write(array, meta, path, channels=False)``. They are wired
to file extensions in :mod:`fusionseg.data.formats`; use :mod:`fusionseg.data.io` rather than these.
"""
