"""The Gradio demo (UI only). Installed as ``thinkless_lite.demo``, so ``thinkless-lite demo`` works from any folder."""
