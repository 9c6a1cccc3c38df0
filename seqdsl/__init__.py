"""seqdsl: a declarative compiler for recurrent sequence models."""
