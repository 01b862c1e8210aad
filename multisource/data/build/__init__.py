"""The build side of the data: what turns a download, a generator or your own images into a built dataset (bins of
``train/val/test/<class>/`` folders and the ``dataset_card.json`` every reader takes its facts from), and the
packed cache. Nothing on the read side (``multisource.data``: the registry, the card, the loaders) imports it,
so reading a built dataset never loads a builder; tests/test_layers.py keeps it so."""
