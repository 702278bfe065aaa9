"""What a store's pages and its shoppers see without a key: the "notify me" widget
(``/widget.js``) and the shopper's own page (``/s/{token}``)."""
