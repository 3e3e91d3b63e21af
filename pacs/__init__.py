"""PACS: DICOMweb in, DICOM Structured Reports and Secondary Captures out."""
