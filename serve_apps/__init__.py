"""The four pipelines as Ray Serve applications (issue 5); empty until then."""
