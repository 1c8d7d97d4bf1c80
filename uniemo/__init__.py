"""UniEmo: one model that understands which emotion an image evokes and generates images
that evoke a chosen emotion (paper: "UniEmo: Unifying Emotional Understanding and Generation
with Learnable Expert Queries")."""

__version__ = "0.1.0"
