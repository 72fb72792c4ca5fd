"""Host-side builder: manifest → render → base → build → normalize → tag → verify → record → push."""
