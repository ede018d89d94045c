"""What both sides of the protocol speak: neither client nor server, imported by both.

`codec` converts between protobuf frames/masks and numpy arrays, `palette` colours and blends class
masks, `imageinfo` reads image headers without decoding them, `argparsing` is the command lines' parser
base, `extras` reports a missing server extra in one line. Nothing here imports `segstream.client` or
`segstream.server`.
"""
