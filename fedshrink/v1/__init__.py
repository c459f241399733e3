"""Generated protobuf code for fedshrink's wire format (package ``fedshrink.v1``).

Do not edit the ``*_pb2.py``/``*_pb2.pyi`` files by hand: change
``proto/fedshrink/v1/*.proto`` and run ``python scripts/gen_proto.py``.
"""
