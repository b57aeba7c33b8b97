// Package testing holds the tests of the client package: the catalog
// lookup and the microversion header.
package testing
