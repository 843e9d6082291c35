"""The Processing provider (id `rslab`): one algorithm per core job."""
