"""Studies: many images (a CT series, a set of X-rays) analysed as one background job."""
