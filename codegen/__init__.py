"""Code generation for seqdsl, shipped as ``seqdsl.codegen``. ``ops`` is the one op table."""
