"""Time layer: watermarks, window assigners and clocks."""
