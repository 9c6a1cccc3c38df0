"""seqdsl: a declarative compiler for recurrent sequence models.

    import seqdsl
    model = seqdsl.load("examples/gla.seq")      # parse + validate; raises seqdsl.SpecError
    model.analysis()                             # transition class, forms, state size, FLOPs
    ref = seqdsl.reference(model)                # the fp64 step-by-step interpreter (the oracle)
    o, final_state = ref(q=q, k=k, v=v, gk=gk, output_final_state=True)
"""

from seqdsl.api import Model, build, compile, load, loads, reference  # noqa: A004
from seqdsl.errors import SpecError

__version__ = "0.1.0"
__all__ = ["Model", "SpecError", "build", "compile", "load", "loads", "reference", "__version__"]
