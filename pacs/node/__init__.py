"""A DICOM node: modalities and routers send studies by C-STORE (``flask dicom listen``)."""
