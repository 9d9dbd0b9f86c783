{
  "algorithm": "ed25519",
  "key_id": "76e01a902c92146e",
  "signature": "tGGugyAnnaY1aSfG/D5+f7tcJpJkSwtesQ1ux7MrcRQqzKwZl+/xSgW7C11zUtzsn9pigW9oyp9+lDQPia3yCQ=="
}
