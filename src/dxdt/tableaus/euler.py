"""The explicit (forward) Euler method: first order, one stage, fixed step.

Reference: L. Euler, *Institutionum calculi integralis*, vol. 1, 1768; see also E. Hairer, S. P. Nørsett,
G. Wanner, *Solving Ordinary Differential Equations I*, 2nd ed., Springer 1993, §I.7 and §II.1.
"""

from .._tableau import ButcherTableau

EULER = ButcherTableau(
    name="Euler",
    c=(0.0,),
    a=((),),
    b=(1.0,),
    order=1,
    reference="Euler (1768); Hairer, Nørsett & Wanner, Solving ODEs I (1993), §II.1",
)
