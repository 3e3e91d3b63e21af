"""Train, evaluate, preview and batch-score the models: ``python -m training --help``.

Everything reuses the app's decoder, preprocessing and output reading (``inference``),
so a model trained here sees in the app exactly the inputs it was trained on.
"""
