"""Immich's API as facesyncd uses it, one module per job:

transport.py  requests to one server with one key: retries, redirects, deadlines, the key kept safe
answers.py    Immich's JSON read into facesyncd's records (assets, face boxes, times)
listing.py    the listing of what changed (paged by key or Immich 3.2's cursor) and the watermark
client.py     the endpoints: who the key is, the listing, one asset, its faces, its original
"""

from .answers import ASSET_ID_RE, iso_z, parse_asset, parse_time
from .client import Download, ImmichClient
from .clients import ClientFactory, ClientSet
from .listing import Listing, ahead_of, next_watermark
from .transport import error_message, origin_of

__all__ = [
    "ASSET_ID_RE",
    "ClientFactory",
    "ClientSet",
    "Download",
    "ImmichClient",
    "Listing",
    "ahead_of",
    "error_message",
    "iso_z",
    "next_watermark",
    "origin_of",
    "parse_asset",
    "parse_time",
]
