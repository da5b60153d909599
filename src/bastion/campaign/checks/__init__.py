"""Built-in checks; importing this package registers them."""
