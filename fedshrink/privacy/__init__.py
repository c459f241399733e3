"""Client-level differential privacy that composes with fragments and compressed updates (DP-FedAvg).

* :mod:`.settings` -- the ``dp-*`` run settings;
* :mod:`.clipping` -- flat clipping and adaptive clipping (Andrew et al. 2021), pure maths;
* :mod:`.client` -- the client's private step: clip what it holds after adding its error-feedback residual,
  add its noise share (distributed mode), encode so that what it sends stays within the bound;
* :mod:`.stages` -- the aggregation stages: uniform weights and clipping, Gaussian noise per coordinate
  calibrated to the number of clients that held it;
* :mod:`.accountant` -- epsilon with Google's ``dp-accounting`` for fixed-size sampling without replacement;
* :mod:`.controller` -- the server's privacy state across rounds (bound, multipliers, ledger, budget);
* :mod:`.server` -- the planner and strategy that carry it, and what a run records.

``docs/privacy.md`` gives the formulas, the trust model and what is not covered. The server-side
modules import the strategy; import them from their modules (this package imports only the light ones,
because :mod:`fedshrink.protocol` reads :class:`~.client.ClientPrivacy`).
"""

from fedshrink.privacy.client import WITHIN_METRIC, ClientPrivacy, PrivateUplink, private_uplink
from fedshrink.privacy.settings import AT_TARGET, MODES, PrivacySettings

__all__ = ["AT_TARGET", "MODES", "WITHIN_METRIC", "ClientPrivacy", "PrivacySettings", "PrivateUplink",
           "private_uplink"]
