"""MSA Studio core: headless Model State Arithmetic unlearning.

    θ_unlearn = θ_corrupted − α·(θ_forget − θ_clean) + β·(θ_retain − θ_clean)

This package never imports streamlit; the app and the CLI are thin layers over it.
"""

__version__ = "0.1.0"
