<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis minScale="1e+08" maxScale="0" version="3.22.16-Białowieża" styleCategories="AllStyleCategories" hasScaleBasedVisibilityFlag="0">
  <flags>
    <Identifiable>1</Identifiable>
    <Removable>1</Removable>
    <Searchable>1</Searchable>
    <Private>0</Private>
  </flags>
  <temporal fetchMode="0" enabled="0" mode="0">
    <fixedRange>
      <start></start>
      <end></end>
    </fixedRange>
  </temporal>
  <customproperties>
    <Option type="Map">
      <Option type="QString" name="identify/format" value="Value"/>
    </Option>
  </customproperties>
  <pipe-data-defined-properties>
    <Option type="Map">
      <Option type="QString" name="name" value=""/>
      <Option name="properties"/>
      <Option type="QString" name="type" value="collection"/>
    </Option>
  </pipe-data-defined-properties>
  <pipe>
    <provider>
      <resampling zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour" enabled="false" maxOversampling="2"/>
    </provider>
    <rasterrenderer type="singlebandpseudocolor" classificationMax="1" classificationMin="0" nodataColor="" band="1" alphaBand="-1" opacity="1">
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" labelPrecision="6" maximumValue="1" minimumValue="0" clip="1">
          <colorramp type="gradient" name="[source]">
            <Option type="Map">
              <Option type="QString" name="color1" value="0,0,4,255"/>
              <Option type="QString" name="color2" value="252,253,191,255"/>
              <Option type="QString" name="discrete" value="0"/>
              <Option type="QString" name="rampType" value="gradient"/>
              <Option type="QString" name="stops" value="0.0196078;2,2,11,255:0.0392157;5,4,22,255:0.0588235;9,7,32,255:0.0784314;14,11,43,255:0.0980392;20,14,54,255:0.117647;26,16,66,255:0.137255;33,17,78,255:0.156863;41,17,90,255:0.176471;49,17,101,255:0.196078;57,15,110,255:0.215686;66,15,117,255:0.235294;74,16,121,255:0.254902;82,19,124,255:0.27451;90,22,126,255:0.294118;98,25,128,255:0.313725;106,28,129,255:0.333333;114,31,129,255:0.352941;121,34,130,255:0.372549;129,37,129,255:0.392157;137,40,129,255:0.411765;145,43,129,255:0.431373;153,45,128,255:0.45098;161,48,126,255:0.470588;170,51,125,255:0.490196;178,53,123,255:0.509804;186,56,120,255:0.529412;194,59,117,255:0.54902;202,62,114,255:0.568627;210,66,111,255:0.588235;217,70,107,255:0.607843;224,76,103,255:0.627451;231,82,99,255:0.647059;236,88,96,255:0.666667;241,96,93,255:0.686275;244,105,92,255:0.705882;247,114,92,255:0.72549;249,123,93,255:0.745098;251,133,96,255:0.764706;252,142,100,255:0.784314;253,152,105,255:0.803922;254,161,110,255:0.823529;254,170,116,255:0.843137;254,180,123,255:0.862745;254,189,130,255:0.882353;254,198,138,255:0.901961;254,207,146,255:0.921569;254,216,154,255:0.941176;253,226,163,255:0.960784;253,235,172,255:0.980392;252,244,182,255"/>
            </Option>
            <prop v="0,0,4,255" k="color1"/>
            <prop v="252,253,191,255" k="color2"/>
            <prop v="0" k="discrete"/>
            <prop v="gradient" k="rampType"/>
            <prop v="0.0196078;2,2,11,255:0.0392157;5,4,22,255:0.0588235;9,7,32,255:0.0784314;14,11,43,255:0.0980392;20,14,54,255:0.117647;26,16,66,255:0.137255;33,17,78,255:0.156863;41,17,90,255:0.176471;49,17,101,255:0.196078;57,15,110,255:0.215686;66,15,117,255:0.235294;74,16,121,255:0.254902;82,19,124,255:0.27451;90,22,126,255:0.294118;98,25,128,255:0.313725;106,28,129,255:0.333333;114,31,129,255:0.352941;121,34,130,255:0.372549;129,37,129,255:0.392157;137,40,129,255:0.411765;145,43,129,255:0.431373;153,45,128,255:0.45098;161,48,126,255:0.470588;170,51,125,255:0.490196;178,53,123,255:0.509804;186,56,120,255:0.529412;194,59,117,255:0.54902;202,62,114,255:0.568627;210,66,111,255:0.588235;217,70,107,255:0.607843;224,76,103,255:0.627451;231,82,99,255:0.647059;236,88,96,255:0.666667;241,96,93,255:0.686275;244,105,92,255:0.705882;247,114,92,255:0.72549;249,123,93,255:0.745098;251,133,96,255:0.764706;252,142,100,255:0.784314;253,152,105,255:0.803922;254,161,110,255:0.823529;254,170,116,255:0.843137;254,180,123,255:0.862745;254,189,130,255:0.882353;254,198,138,255:0.901961;254,207,146,255:0.921569;254,216,154,255:0.941176;253,226,163,255:0.960784;253,235,172,255:0.980392;252,244,182,255" k="stops"/>
          </colorramp>
          <item label="0" color="#000004" alpha="255" value="0"/>
          <item label="0.0196" color="#02020b" alpha="255" value="0.0196078"/>
          <item label="0.0392" color="#050416" alpha="255" value="0.0392157"/>
          <item label="0.0588" color="#090720" alpha="255" value="0.0588235"/>
          <item label="0.0784" color="#0e0b2b" alpha="255" value="0.0784314"/>
          <item label="0.098" color="#140e36" alpha="255" value="0.0980392"/>
          <item label="0.118" color="#1a1042" alpha="255" value="0.117647"/>
          <item label="0.137" color="#21114e" alpha="255" value="0.137255"/>
          <item label="0.157" color="#29115a" alpha="255" value="0.156863"/>
          <item label="0.176" color="#311165" alpha="255" value="0.176471"/>
          <item label="0.196" color="#390f6e" alpha="255" value="0.196078"/>
          <item label="0.216" color="#420f75" alpha="255" value="0.215686"/>
          <item label="0.235" color="#4a1079" alpha="255" value="0.235294"/>
          <item label="0.255" color="#52137c" alpha="255" value="0.254902"/>
          <item label="0.275" color="#5a167e" alpha="255" value="0.27451"/>
          <item label="0.294" color="#621980" alpha="255" value="0.294118"/>
          <item label="0.314" color="#6a1c81" alpha="255" value="0.313725"/>
          <item label="0.333" color="#721f81" alpha="255" value="0.333333"/>
          <item label="0.353" color="#792282" alpha="255" value="0.352941"/>
          <item label="0.373" color="#812581" alpha="255" value="0.372549"/>
          <item label="0.392" color="#892881" alpha="255" value="0.392157"/>
          <item label="0.412" color="#912b81" alpha="255" value="0.411765"/>
          <item label="0.431" color="#992d80" alpha="255" value="0.431373"/>
          <item label="0.451" color="#a1307e" alpha="255" value="0.45098"/>
          <item label="0.471" color="#aa337d" alpha="255" value="0.470588"/>
          <item label="0.49" color="#b2357b" alpha="255" value="0.490196"/>
          <item label="0.51" color="#ba3878" alpha="255" value="0.509804"/>
          <item label="0.529" color="#c23b75" alpha="255" value="0.529412"/>
          <item label="0.549" color="#ca3e72" alpha="255" value="0.54902"/>
          <item label="0.569" color="#d2426f" alpha="255" value="0.568627"/>
          <item label="0.588" color="#d9466b" alpha="255" value="0.588235"/>
          <item label="0.608" color="#e04c67" alpha="255" value="0.607843"/>
          <item label="0.627" color="#e75263" alpha="255" value="0.627451"/>
          <item label="0.647" color="#ec5860" alpha="255" value="0.647059"/>
          <item label="0.667" color="#f1605d" alpha="255" value="0.666667"/>
          <item label="0.686" color="#f4695c" alpha="255" value="0.686275"/>
          <item label="0.706" color="#f7725c" alpha="255" value="0.705882"/>
          <item label="0.725" color="#f97b5d" alpha="255" value="0.72549"/>
          <item label="0.745" color="#fb8560" alpha="255" value="0.745098"/>
          <item label="0.765" color="#fc8e64" alpha="255" value="0.764706"/>
          <item label="0.784" color="#fd9869" alpha="255" value="0.784314"/>
          <item label="0.804" color="#fea16e" alpha="255" value="0.803922"/>
          <item label="0.824" color="#feaa74" alpha="255" value="0.823529"/>
          <item label="0.843" color="#feb47b" alpha="255" value="0.843137"/>
          <item label="0.863" color="#febd82" alpha="255" value="0.862745"/>
          <item label="0.882" color="#fec68a" alpha="255" value="0.882353"/>
          <item label="0.902" color="#fecf92" alpha="255" value="0.901961"/>
          <item label="0.922" color="#fed89a" alpha="255" value="0.921569"/>
          <item label="0.941" color="#fde2a3" alpha="255" value="0.941176"/>
          <item label="0.961" color="#fdebac" alpha="255" value="0.960784"/>
          <item label="0.98" color="#fcf4b6" alpha="255" value="0.980392"/>
          <item label="1" color="#fcfdbf" alpha="255" value="1"/>
          <rampLegendSettings useContinuousLegend="1" orientation="2" prefix="" suffix="" direction="0" minimumLabel="" maximumLabel="">
            <numericFormat id="basic">
              <Option type="Map">
                <Option type="QChar" name="decimal_separator" value=""/>
                <Option type="int" name="decimals" value="6"/>
                <Option type="int" name="rounding_type" value="0"/>
                <Option type="bool" name="show_plus" value="false"/>
                <Option type="bool" name="show_thousand_separator" value="true"/>
                <Option type="bool" name="show_trailing_zeros" value="false"/>
                <Option type="QChar" name="thousand_separator" value=""/>
              </Option>
            </numericFormat>
          </rampLegendSettings>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast gamma="1" contrast="0" brightness="0"/>
    <huesaturation saturation="0" colorizeGreen="128" colorizeBlue="128" colorizeRed="255" colorizeOn="0" colorizeStrength="100" grayscaleMode="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
