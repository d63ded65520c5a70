"""Hash-grid neural attenuation field (NAF-class) with a compiled CPU hash-encoding kernel."""

from nr.fields.field import FieldConfig, HashGridField
from nr.fields.hashgrid import HashGridConfig, HashGridEncoding, hash_encode, hash_encode_torch

__all__ = [
    "FieldConfig",
    "HashGridConfig",
    "HashGridEncoding",
    "HashGridField",
    "hash_encode",
    "hash_encode_torch",
]
