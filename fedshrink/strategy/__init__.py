"""fedshrink's Flower Strategy and the aggregation it runs, as pure functions and small objects.

* :mod:`.batch` -- the round's accepted updates in global coordinates (held and sent masks);
* :mod:`.contributions` -- an accepted reply into global coordinates; bounding claimed sample counts;
* :mod:`.stages` -- aggregation as ordered stages; the one holder-weighted mean (FedAvg);
* :mod:`.memory` -- each client's latest update, counted again in a round it misses (``absent-updates``);
* :mod:`.plan` -- what each node trains in a round (whole model or fragment), and what its reply must be;
* :mod:`.rounds` -- :class:`~.rounds.ShrinkStrategy`, the thin Flower Strategy over the above;
* :mod:`.settings` -- the federation's settings.

The Strategy imports Flower; import it from :mod:`fedshrink.strategy.rounds`.
"""
