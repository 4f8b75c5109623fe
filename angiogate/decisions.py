"""The decisions a clip can get: the judge's words, the verdict log's values.

Below both the judge and the store, so the judge names a decision without
importing the database layer, and the schema stores exactly these words.
"""

SATISFACTORY = "satisfactory"
UNSATISFACTORY = "unsatisfactory"
ERROR = "error"
NOT_APPLICABLE = "not_applicable"
DECISIONS = (SATISFACTORY, UNSATISFACTORY, ERROR, NOT_APPLICABLE)
