"""Training data sources: one class per kind of data, named by `_target_` in its `conf/data/*.yaml`.

A source checks its paths, reads its rows (minus held-out evaluation sentences), says its row kind and
gives the row preparer the `ObjectiveCollator` runs in DataLoader workers (the contract: `base.DataSource`).
`mmembed.lit.datamodule.TrainingDataModule` serves any of them. Kinds:
- `text_pairs.TextPairSource`: SimCSE `sent0,sent1[,hard_neg]` files (NLI triplets; E5-V, UniME stage 1);
- `caption_pairs.CaptionPairSource`: two captions of one image as a text pair (Flickr30K; E5-V's recipe, other text);
- `image_text.ImageTextSource`: image-caption pairs of several layouts, region-phrase pairs included (MM-GEM);
- `mmeb.MMEBTrainSource`: MMEB training rows (query, positive[, negative]; UniME stage 2).
"""
