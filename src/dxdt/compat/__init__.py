"""Drop-in interfaces of other ODE libraries, implemented on :func:`dxdt.solve`.

- :mod:`dxdt.compat.torchdiffeq`: ``odeint`` with torchdiffeq's signature and semantics.
"""
