"""The code behind helpers.py: one module per concern (README, 'Where things live')."""
