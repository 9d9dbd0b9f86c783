{
  "algorithm": "ed25519",
  "key_id": "76e01a902c92146e",
  "signature": "LjkQNzCIjfgpqU6soPsH4b6c5dpE4RSheosyxvtKfm/tZVGRomp3dUGwhcAqKt/nwmi34yPej9zPREh4+empBg=="
}
