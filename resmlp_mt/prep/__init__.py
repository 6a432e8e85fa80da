"""Data preparation for translation: raw corpora -> sentencepiece -> fairseq data-bin.

``multi30k`` and ``wmt14`` hold the two command-line tools; ``common`` the steps they share.
"""
