"""A listener's TLS inspection, compiled: its CA, its leaf store and how origins are
verified (``tls_inspection``).

Built with the rest of the policy in the master.  ``qpxd run`` makes the CA first when
the directory holds none (:func:`ensure_ca`, the path logged); ``check`` only warns.
The leaf store (:class:`~qpx.ca.LeafStore`) is per worker in memory, shared on disk.
"""

from __future__ import annotations

import logging

from . import log
from .config import model as m
from .rules import MatchContext, RuleSet


class InspectionPlan:
    def __init__(self, spec: m.Inspection):
        self.spec = spec
        self.verify = spec.verify_upstream
        self.exceptions = RuleSet.compile([m.MatchSpec(host=(h,))
                                           for h in spec.verify_exceptions]) \
            if spec.verify_exceptions else None
        self.leaves = None
        self.attach()

    def attach(self) -> bool:
        """Load the CA if it exists now; True when inspection can run."""
        from .ca import CaError, LeafStore, exists, load

        if self.leaves is not None:
            return True
        if not exists(self.spec.ca_dir):
            return False
        try:
            ca = load(self.spec.ca_dir)
        except CaError:
            return False  # check reported it
        import os

        self.leaves = LeafStore(ca, os.path.join(self.spec.ca_dir, "leaves"))
        return True

    def verifies(self, host: str) -> bool:
        """Whether the origin ``host`` is verified (not in ``verify_exceptions``)."""
        if not self.verify:
            return False
        ex = self.exceptions
        return ex is None or ex.first_match(MatchContext(host=host)) < 0

    def origin_context(self, host: str):
        from .tlsctx import client_context

        return client_context(self.verifies(host))


def ensure_ca(policy) -> list[str]:
    """Before ``run`` serves: every inspecting listener has its CA (made when missing);
    returns the certificates made."""
    from .ca import generate

    made = []
    for lp in policy.listeners.values():
        plan = lp.inspection
        if plan is None or plan.attach():
            continue
        cert, key = generate(plan.spec.ca_dir)
        if log.logger.handlers:  # a reload (at start, cli prints it: logs are not up)
            log.log(logging.WARNING, "generated the TLS inspection CA: clients must trust "
                    "it", listener=lp.name, cert=cert, key=key)
        made.append(cert)
        plan.attach()
    return made
