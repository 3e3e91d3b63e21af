"""What this tool writes back into an analysed PACS study: a Structured Report of the
answer and Secondary Captures of the heatmaps, both marked for research use only."""

from .captures import SC_DESCRIPTION, heatmap_captures
from .report_sr import RESEARCH_WARNING, SOFTWARE_NAME, SR_DESCRIPTION, structured_report

__all__ = ["RESEARCH_WARNING", "SC_DESCRIPTION", "SOFTWARE_NAME", "SR_DESCRIPTION",
           "heatmap_captures", "structured_report"]
