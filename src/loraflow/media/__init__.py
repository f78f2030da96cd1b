"""Reading image and video files and naming what is wrong with them: decoding, headers and findings that the
dataset pipeline, the captioners and the video engines share (a leaf under all three)."""
