from .ttd import TTD
