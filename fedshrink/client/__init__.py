"""A device's side of a round, without Flower: who the node is, and the local round it plays.

* :mod:`.node` -- the node's identity and device profile, from its node config and the run settings;
* :mod:`.local` -- one local round: build the (sub-)model an instruction describes, train it, encode the update.
"""
