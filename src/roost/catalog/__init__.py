"""The hub's signed catalog: app bundles as TUF targets, one repository per tenant.

``Catalog`` is the front the hub holds; ``TenantRepository`` signs and serves one
tenant's metadata; ``BlobStore`` keeps the bytes, content-addressed by SHA-256.
"""

from roost.catalog.blobs import Blob, BlobStorage, BlobStore, MemoryBlobStore
from roost.catalog.repository import Catalog, Lifetimes, TargetInfo, TenantRepository

__all__ = [
    "Blob",
    "BlobStorage",
    "BlobStore",
    "Catalog",
    "Lifetimes",
    "MemoryBlobStore",
    "TargetInfo",
    "TenantRepository",
]
