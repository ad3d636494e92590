"""The config file: its model, what a valid one may still get wrong, its reference."""
