"""Feature dashboards (`vsae viz`): one streaming scan of a table's tokens gives every latent's statistics and
examples (`scan`), decoder geometry gives neighbours, logit effects and a 2-D map (`directions`), and
`render` writes an index page plus one page per chosen feature (`build`)."""
