"""Utilities outside the model: FLOP analysis (``analysis``), pictures of TTD on caption images
(``visualize``)."""
