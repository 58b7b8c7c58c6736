"""alphafuse: fuse frozen video and audio encoders (cached features, fusion heads, grids).

The checkout's folders (extract/, data/, cache/, fuse/, cli.py, settings.py) are installed as
this one package, so alphafuse never shadows, nor is shadowed by, a user's own ``data`` package
or ``settings.py``: ``from alphafuse.data import read_manifest``. Nothing heavy is imported here;
each subpackage pays for its own imports.
"""
__version__ = "0.2.0"
