"""The local web page: a person sees and hears the avatar in a browser (local development only)."""
