"""ICAO 9303 LDS1 elementary files, one module per file (STYLE habit 3)."""
